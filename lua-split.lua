-- one reading per value
function transform(m)
  local out = {}
  for v in m.payload:gmatch('[^;]+') do
    out[#out + 1] = {payload = v}
  end
  return out
end
