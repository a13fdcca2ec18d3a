"""Kinds used by the tests beside the calculator: one with every field type,
and a shared (non-ownable) one."""

from __future__ import annotations

import peewee

from broker.kind_data import ResourceData


class PhoneData(ResourceData):
    """A phone on a test bench."""

    os = peewee.CharField(max_length=32, help_text="The operating system, e.g. android.")
    version = peewee.IntegerField(default=0, help_text="The OS major version.")
    rooted = peewee.BooleanField(default=False, help_text="Whether it is rooted.")
    battery = peewee.FloatField(null=True, help_text="Battery capacity in mAh.")


class LicenceData(ResourceData):
    """A floating licence that many runs may hold at once."""

    OWNABLE = False

    product = peewee.CharField(max_length=64, help_text="The licensed product.")


class GaugeData(ResourceData):
    """A measuring instrument, whose numbers need every storage width (not
    among `TEST_KINDS`: tests that use it add it)."""

    serial = peewee.BigIntegerField(null=True, help_text="The maker's 64-bit serial number.")
    channel = peewee.SmallIntegerField(default=0, help_text="The input it reads.")
    reading = peewee.DoubleField(null=True, help_text="The last reading, in volts.")


TEST_KINDS = (
    "resources.calculator.data.CalculatorData",
    "tests.kinds.PhoneData",
    "tests.kinds.LicenceData",
)


class BoardData(ResourceData):
    """A development board whose fields take only some values (not among
    `TEST_KINDS`: tests that use it add it)."""

    soc = peewee.CharField(
        max_length=16, choices=[("imx8", "i.MX 8"), ("rk3588", "RK3588")], help_text="Its chip."
    )
    ram_gb = peewee.IntegerField(choices=[2, 4, 8], default=4, help_text="Memory in GiB.")
    calibrated = peewee.DateTimeField(null=True, help_text="When it was last calibrated.")


class SimData(ResourceData):
    """A SIM card: a resource of its own, and a sub-resource of the handset
    it sits in (not among `TEST_KINDS`: see `TREE_KINDS`)."""

    carrier = peewee.CharField(max_length=32, help_text="The network it is on.")
    slots = peewee.IntegerField(default=1, help_text="Profiles it holds.")


class HandsetData(ResourceData):
    """A handset with a SIM card in it: leasing the handset leases its SIM."""

    model = peewee.CharField(max_length=32, default="", help_text="The maker's model.")
    sim = peewee.ForeignKeyField(SimData, null=True, help_text="The SIM card in it.")


class DualSimHandsetData(ResourceData):
    """A handset with two SIM cards in it."""

    model = peewee.CharField(max_length=32, default="", help_text="The maker's model.")
    sim = peewee.ForeignKeyField(SimData, null=True, backref="+", help_text="The first SIM.")
    sim2 = peewee.ForeignKeyField(SimData, null=True, backref="+", help_text="The second SIM.")


# Kinds with sub-resources, besides the usual ones.
TREE_KINDS = (
    *TEST_KINDS,
    "tests.kinds.SimData",
    "tests.kinds.HandsetData",
    "tests.kinds.DualSimHandsetData",
)
