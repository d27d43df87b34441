"""CAPEv2 / Cuckoo 3 processing module for telfhash."""
