"""The toy talking-head world (`world`, `speech`, `clips`), the toy V-Express trained on it
(`model`, `recipe`) and the figures that tell a talking face from noise (`metrics`, `evaluate`).
`python training toy {render,train,eval} ...`; nothing here imports ComfyUI."""
