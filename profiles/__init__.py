"""Built-in security profiles (TOML) and seccomp policies (OCI/Docker JSON); data only."""
