"""Adapters that put telfhash where analysts work: MISP, CAPEv2/Cuckoo 3, STIX 2.1, YARA."""
