"""The reference sync server (Trio): bindings, storage backends, admin API, fault modes."""
