"""The resizer every reward-model input and query frame goes through, in a module that imports only numpy
and PIL, so that :class:`~vlm_reward_wrappers.frames.FramePreparer`'s worker process starts in a tenth of a
second without the rest of the package."""
