"""Privacy probes: does a generator give away its training data?"""
