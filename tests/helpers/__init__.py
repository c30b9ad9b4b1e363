"""What the tests share, by role (fixtures live in tests/conftest.py):

- `stack`: the stack under test (a private MariaDB, the services in-process or as processes);
- `factories`: a product, an activity, a timestamp, made through the API;
- `rpc`: a call's status code and google.rpc details, and paging through a list;
- `polling`: `eventually`, for states that nothing announces;
- `flash_sale`: the fault harness: a sale under load, its services as processes, a lock holder;
- `bad_input`: the checked caller and the hostile-value strategies of the bad-input tests.
"""
