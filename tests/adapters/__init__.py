"""Test-side adapters that point unchanged libcloud drivers at local emulators (moto)."""
