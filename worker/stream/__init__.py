"""The running worker: the Faust app, its agent, processing, policy lifecycle, metrics and health."""
