function transform(m)
  return m +
end
