"""Authentication (JWT/JWKS), roles and permissions (IEC 62351-8), the audit chain and request limits."""
