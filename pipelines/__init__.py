"""Ray Data pipelines (batch dubbing, dataset preprocessing), wired from lipsync/ stages only."""
