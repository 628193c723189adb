"""Authentication and authorization for the State Service (see shoal.state.auth.policy)."""
