"""The harness core: the types every module passes around, the runner and the results store."""
