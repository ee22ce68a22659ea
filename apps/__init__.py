"""The applications above every role package: the umbrella ``mpfl`` CLI, the demo, the
process launcher, experiments, baselines and the link planner."""
