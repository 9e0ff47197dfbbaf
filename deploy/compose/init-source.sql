-- Example source tables for docker-compose.yml (mounted into the source container's init folder).
CREATE TABLE public.customers (id bigint PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, amount numeric(12,2), created_at timestamptz DEFAULT now());
