"""What every management command of this repository shares, so that each fails the same clear way.

A plain package (not a Django app): :mod:`commandline.base` holds the base command class.
"""
