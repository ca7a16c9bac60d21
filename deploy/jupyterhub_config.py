"""JupyterHub configuration for teaching the xailab course to a class.

The course part only: load it from the hub's own configuration (TLJH: copy it to
/opt/tljh/config/jupyterhub_config.d/; plain JupyterHub: ``load_subconfig``), which
chooses the authenticator and spawner. Each student gets:

- their own copy of the labs in ``~/xailab/labs`` (deploy/start-singleuser.sh copies
  what they do not have yet and never overwrites their work), opened on login;
- the course environment (built from environment.yml) and the shipped models and data,
  read from one shared, read-only checkout of the repository at ``$XAILAB_COURSE``
  (default /srv/xailab): nothing is copied per student except the labs;
- one CPU thread for PyTorch and a memory limit (enforced by SystemdSpawner on TLJH
  and KubeSpawner on Kubernetes; tests/test_hub.py measures what a student uses).
"""
import os

c = get_config()  # noqa: F821

COURSE = os.environ.get("XAILAB_COURSE", "/srv/xailab")
# bin/ of the course environment (conda env create -p /opt/xailab-env -f environment.yml on TLJH);
# empty: jupyterhub-singleuser from the PATH (the repo2docker image on Kubernetes, the test)
ENV_BIN = os.environ.get("XAILAB_ENV_BIN") or ("/opt/xailab-env/bin" if os.path.isdir("/opt/xailab-env/bin") else "")

c.Spawner.cmd = ["bash", os.path.join(COURSE, "deploy", "start-singleuser.sh")]
c.Spawner.default_url = "/lab/tree/xailab/labs"
c.Spawner.environment = {
    "XAILAB_COURSE": COURSE,
    "OMP_NUM_THREADS": "1",            # many students share the cores: one thread each
    "MKL_NUM_THREADS": "1",
    "XAILAB_SINGLEUSER": os.path.join(ENV_BIN, "jupyterhub-singleuser") if ENV_BIN else "jupyterhub-singleuser",
}
c.Spawner.mem_limit = "2G"             # measured: about 1.1 GB per student after lab 02 (README)
c.Spawner.cpu_limit = 1.0
c.Spawner.start_timeout = 120          # importing torch on a busy server can take a while
c.Spawner.http_timeout = 120
