"""The user service: accounts, login, refresh tokens and the JWKS other services verify with."""
