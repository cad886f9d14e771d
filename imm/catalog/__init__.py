"""Registry and trust: digests, manifests, keys, DSSE envelopes, store, ledger, Packer import."""
