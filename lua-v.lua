function transform(m) return 'v2' end
