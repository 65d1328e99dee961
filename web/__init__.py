"""The local web demo: a page and an HTTP JSON API over one copy of each CogView model.

``web.backend`` runs the tasks on in-memory inputs, ``web.jobs`` queues requests for the one worker thread
that owns the models, ``web.uploads`` checks uploaded images, ``web.app`` is the FastAPI application and
``web.server`` the command line (``scripts/web_demo.sh``) that loads the models and serves them.
"""
