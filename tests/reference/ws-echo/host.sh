#!/bin/sh
# Stand-in for the host binary: `tenantry-bench --host-bin "$PWD/host.sh" echo`
# starts this instead of tenantry and measures it the same way. The bench's
# arguments (serve --config ...) are ignored.
exec node "$(dirname "$0")/server.js"
