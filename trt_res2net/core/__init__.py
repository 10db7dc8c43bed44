"""Errors, atomic files, hashing, cache folders: what every stage uses."""
