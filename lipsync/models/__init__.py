"""Model components: the LatentSync-compatible UNet, audio encoders, VAE, SyncNet, and the
shared weight-file reader."""
