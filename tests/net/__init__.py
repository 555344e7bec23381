"""Network-namespace topologies and a real coturn, for tests that need peers which cannot
reach each other except through a relay (root only; see ``netns_available``)."""
