"""The web console: pages for people, served beside the HTTP/JSON API.

It is a client of its own broker: every page is made of gRPC calls through
the broker's own channel, carrying the visitor's token, so the role table,
validation and errors are those of every other client. Live updates come
from one subscription per broker (`broker.web.console.live`)."""
