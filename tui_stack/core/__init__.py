"""Pure core: numpy in, numpy out, one module per step. No UI, no printing."""
