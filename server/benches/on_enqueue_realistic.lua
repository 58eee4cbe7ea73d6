wants_payload = true
function on_enqueue(msg)
  local tenant = msg.headers["x-tenant"] or "anonymous"
  local body = fila.json_decode(msg.payload)
  local plan = fila.get("plan." .. tenant) or "free"
  local weight = 1
  if plan == "pro" then weight = 5 elseif plan == "enterprise" then weight = 20 end
  local keys = { "tenant:" .. tenant }
  if body.provider then keys[#keys + 1] = "provider:" .. body.provider end
  return { fairness_key = tenant, weight = weight, throttle_keys = keys }
end
