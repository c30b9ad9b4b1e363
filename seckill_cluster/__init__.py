"""A MariaDB Galera cluster and app hosts on one machine, each host in a network namespace of
its own, with machine faults on demand (see docs/CLUSTER.md)."""
