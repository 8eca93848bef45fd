"""The keyring of root keys and its seals (the master key, or an HSM): unlocking it, rotating root
keys on a schedule and rewrapping records onto them, rewrapping the keyring under a new wrapping
key, and the recovery kit for a lost one.
"""
