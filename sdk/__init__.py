"""The Python SDK of the resource broker: lease lab resources and drive them.

from sdk import BrokerClient
from resources.calculator.resource import Calculator

with BrokerClient("127.0.0.1:50051") as client:
    with client.lease(Calculator, name="calc", wait=300) as calc:
        print(calc.calculate("6 * 7"))
"""

from sdk.base_resource import BaseResource, StateError, check_active
from sdk.channel import TlsOptions
from sdk.client import BrokerClient
from sdk.errors import (
    AbortedError,
    AlreadyExistsError,
    BrokerError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    LeaseNotActiveError,
    NotFoundError,
    PermissionDeniedError,
    ResourceBusyError,
    UnauthenticatedError,
    UnavailableError,
)
from sdk.lease import Lease
from sdk.requirements import ResourceRequest, request
from sdk.session import Session
from sdk.waiting import Granted, Waiting, wait_for_grant

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "BaseResource",
    "BrokerClient",
    "BrokerError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "Granted",
    "InternalError",
    "InvalidArgumentError",
    "Lease",
    "LeaseNotActiveError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceBusyError",
    "ResourceRequest",
    "Session",
    "StateError",
    "TlsOptions",
    "UnauthenticatedError",
    "UnavailableError",
    "Waiting",
    "check_active",
    "request",
    "wait_for_grant",
]
