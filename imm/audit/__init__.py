"""The audit layer: sweeps judge every running instance against the catalog (``verdicts``,
``sweep``), their changes become observations, findings and signed ledger records (``events``),
and ``export`` writes signed bundles that ``bundle_verify`` checks offline."""
