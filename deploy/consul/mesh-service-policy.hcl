# ACL policy for a fastapi-mesh service that registers itself (discovery.register) and discovers the
# services it calls through Consul. One policy per service: replace "user-service" with its
# MESH_SERVICE_NAME.
#   consul acl policy create -name user-service -rules @deploy/consul/mesh-service-policy.hcl
#   consul acl token create -description "user-service" -policy-name user-service
# The token's SecretID goes into MESH_DISCOVERY__CONSUL_TOKEN.

# Self-registration: PUT /v1/agent/service/register and /v1/agent/service/deregister/<id> for its own
# name only, so a compromised service cannot register as (or deregister) another.
service "user-service" {
  policy = "write"
}

# Discovery: GET /v1/health/service/<name>?passing for the services it calls. Narrow the prefix to the
# names it calls if you like; "" allows every service.
service_prefix "" {
  policy = "read"
}

# The health API answers with each instance's node (its address when the service has none).
node_prefix "" {
  policy = "read"
}
