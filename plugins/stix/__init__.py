"""STIX 2.1 export/import of telfhash clusters."""
