"""The API's routes, one router per concern.

The app mounts their routes flat (``FastAPI(routes=...)``), not with ``include_router``: since
FastAPI 0.137 an included router stays a node of the route tree that every request walks through,
which cost a cached ``/predict`` ~10-15 µs here (~10% of its CPU in the app).
"""

from streamflow.serving.routers import admin, features, predict, probes

# Matched in this order: the hot path first.
ROUTERS = (predict.router, features.router, probes.router, admin.router)
