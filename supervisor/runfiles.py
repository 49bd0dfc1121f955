"""The names of what llmsup keeps in its run directory, each spelled once.

The run directory is ``--run-dir``, else ``LLMSUP_RUN_DIR``, else ``./.llmsup`` (private: ``rundir.py``). The server
writes these files there and clients find the server through them. This module imports nothing, so the client
(which imports nothing else of llmsup's) reads the same names. The engines' own code, shipped to engine processes,
takes its directories from its configuration instead.
"""

RUN_DIR_ENV = "LLMSUP_RUN_DIR"  # the run directory when no --run-dir is given
DEFAULT_RUN_DIR = ".llmsup"  # ... and when LLMSUP_RUN_DIR is not set either

SERVER_FILE = "server.json"  # the serving web app's URL, while it serves (clients find the server here)
ADMIN_TOKEN = "admin_token"  # the admin bearer token, generated at each start unless one is configured
API_KEY = "api_key"  # a generated API key for the job routes, where keys are required
JOB_STORE = "jobs.sqlite"  # the SQLite job store
PIPELINE_STORE = "pipelines.sqlite"  # pipelines' records (their steps' jobs are in the job store)
PROCESSES = "processes.json"  # the ledger of processes this server started (a leftover's is swept at the next start)
JOIN_FILE = "join.json"  # what another host needs to add engines (``llmsup join``): a secret
IPYTHON_DIR = "ipython"  # IPyParallel's files: IPYTHONDIR
PROFILE_DIR = "profile_llmsup"  # the cluster's IPython profile, inside IPYTHON_DIR (its connection files)
LOG_DIR = "logs"  # engines' logs
