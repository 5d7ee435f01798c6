"""Where work runs, for every stage that splits it: a process pool on this machine or a Ray cluster.

`ray_cluster` connects to Ray (or starts a local cluster bound to 127.0.0.1); `shards` runs the shards of one
computation (node sensitivity's configurations; the search's screened candidates) with the data
they all read shared once per shard group. May import: model (the usable core count), policy (ExecutorSpec),
errors, scratch.
"""
