"""The verifier: replays sampled segments bit for bit and decides accept or reject."""
