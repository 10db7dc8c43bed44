"""Command-line front ends; the top-level build.py and infer.py only call ``main()`` here."""
