"""The rules of the broker: kinds, inventory, matching, leasing, expiry.

Nothing here imports gRPC or the generated messages: it takes and returns the
frozen values of `values.py` and raises the errors of `errors.py`.
"""
