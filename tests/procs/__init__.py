"""Scripts the multi-process tests run as child processes (`python tests/procs/<name>.py ...`)."""
