function transform(m)
  local v = tonumber(m.payload)
  if v > 0 then error('positive: ' .. v) end
  return {topic = 'bad/#'}
end
