-- One schema per owner, so each service's tables are found (and later granted) as a unit:
-- sales, billing and shipping for the endpoints, retail for the client's own records of
-- what it placed, and gateway for the stand-in provider's and courier's ledger.
CREATE SCHEMA IF NOT EXISTS sales;
CREATE SCHEMA IF NOT EXISTS billing;
CREATE SCHEMA IF NOT EXISTS shipping;
CREATE SCHEMA IF NOT EXISTS retail;
CREATE SCHEMA IF NOT EXISTS gateway;
