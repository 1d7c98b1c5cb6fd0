"""The demo: a throwaway PostgreSQL, the seed workloads and their scoring as a labelled corpus."""
