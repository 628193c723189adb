"""The process model every shoal service runs under (docs/DEVELOPING.md, "Process model").

- `lifetime`: a worker or child process never outlives the process that started it
  (PR_SET_PDEATHSIG plus a parent-pid watchdog).
- `datadir_lock`: one live service per data dir (flock, held by the whole process tree).
- `ports`: a port bound by another live process is refused with the holder's pid.
"""
