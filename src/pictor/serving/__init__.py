"""Serving: an async REST API and a web page over one or more loaded pipelines (`pictor serve`).

settings.py  what the server may do (address, token, limits, batching)
security.py  bearer token and body-size middlewares
batching.py  several requests in one sampler call, each image exactly as its solo call
jobs.py      the bounded job queue, the worker thread, cancellation, progress events
readiness.py loading and warming a model in the background (/readyz, /healthz)
models.py    the served models by name, the first the default; one batch at a time across them
fair_lock.py the first-come-first-served lock their workers share
mark.py      the optional visible "AI-generated" label
schemas.py   JSON bodies (the OpenAPI schema)
routes.py    the REST routes, thin
openai_api.py  POST /v1/images/generations: stateless, OpenAI-compatible, OpenAI error shape
app.py       create_app(settings, pipe): the FastAPI application
static/      the web page (plain HTML, JS and CSS)
"""
