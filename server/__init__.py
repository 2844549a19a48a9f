"""The Starlette app, typed settings, the GraphQL schema, feeds, health/metrics and the `dms` CLI."""
