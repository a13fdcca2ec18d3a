"""Storage: Peewee models and the named queries that read and change them."""
