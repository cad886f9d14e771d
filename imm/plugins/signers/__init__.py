"""Built-in signing-key stores, registered through ``imm_register_signers`` like any plugin's."""
