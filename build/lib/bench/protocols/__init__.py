"""Published evaluation protocols built on train(cfg): cross-validation, two-level classifier."""
